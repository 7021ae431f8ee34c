"""Everyday prompts of every kind, generated from our own templates.

The public labelled sets are benchmark questions: maths, code, quizzes, and a
thousand Chinese instructions. They hold no English translation, summary,
extraction or classification requests at all, and their chat is all quiz
formats. These templates fill those gaps so the classifier learns what such
requests look like in a service's traffic. Generation is deterministic (a
seeded RNG), so training stays reproducible.
"""

from __future__ import annotations

import random

from ..jobs import Kind

PASSAGES = [
    "Hi team, the quarterly review moves from Tuesday 14 May to Thursday 16 May at 10:00 in "
    "room 4B. Please send your slides to Maria Lopez by Wednesday noon. Budget figures are "
    "due to finance (€12,400 approved so far). Thanks, Daniel",
    "Our customer in Leeds reported that invoices since March show the wrong VAT rate. Support "
    "ticket #48213 was opened on 2 April by Sam Patel; engineering traced it to the tax table "
    "update deployed on 28 March and a fix is scheduled for release 3.14.",
    "The city council voted 7 to 2 on Monday to extend the bike lane on Harbour Street by "
    "1.2 km. Construction starts in June and should take eight weeks. Shop owners worry about "
    "losing parking; the council promised a loading zone near the market.",
    "I bought this blender three weeks ago. It crushes ice fine but the lid leaks every time I "
    "make a smoothie, and the customer service line kept me on hold for 40 minutes. Not "
    "buying this brand again.",
    "Absolutely love this backpack! Plenty of pockets, the laptop sleeve fits my 15-inch "
    "machine, and it survived a week of rain in Scotland. Shipping was fast too.",
    "2024-03-02 14:01:07 ERROR payment-service: timeout contacting bank gateway after 30s "
    "(order 99812, user 5521). Retrying in 5s. 2024-03-02 14:01:12 INFO payment-service: "
    "retry succeeded for order 99812.",
    "Meeting notes 3 Feb: attendees Ana, Björn, Chen. Decided to drop the legacy importer. "
    "Chen owns the migration plan, due 20 Feb. Open question: do we keep the CSV export? "
    "Next meeting 17 Feb.",
    "Dear Mr. Okafor, thank you for your application for the data analyst role. We would like "
    "to invite you to an interview on 9 October at 15:30 at our Berlin office, Karl-Marx-Allee "
    "90. Please confirm by replying to this email. Kind regards, HR",
    "The new firmware improves battery life by about 15 percent, adds a dark mode, and fixes a "
    "bug where the device rebooted when pairing over Bluetooth. Update through the settings "
    "menu; the download is 240 MB.",
    "Patient reports mild headaches for two weeks, worse in the morning, no fever. Blood "
    "pressure 150/95. Currently taking ibuprofen 400 mg as needed. Follow-up in 10 days.",
    "The hotel was clean and the staff friendly, but the room was smaller than in the photos "
    "and the street noise kept us awake. Breakfast was decent. Probably an average stay.",
    "Contract summary: supplier Nordwind GmbH delivers 500 units per month from 1 July 2025 "
    "at €18.50 per unit, payment within 30 days, either party may terminate with 90 days' "
    "notice.",
    "Researchers found that people who slept less than six hours a night were more likely to "
    "catch a cold after exposure to the virus than those who slept seven or more hours, "
    "according to a study of 164 adults.",
    "Can someone help? Since this morning I can't log into the VPN from home, it says "
    "'authentication failed' even though my password works for email. I'm on a Mac.",
    "Release plan: feature freeze on 1 September, beta on 15 September, final on 6 October. "
    "Owners: Priya (backend), Tom (mobile), Lea (docs). Risks: the search rewrite is late.",
    "The museum opens a new exhibition on Viking navigation on 12 April. Tickets cost £14 "
    "for adults and £7 for children; members go free. Guided tours run every Saturday.",
    "Order #A-7731 from Kim Nguyen: 2 x wireless mouse at $24.99, 1 x USB-C hub at $39.00, "
    "shipping to 18 Elm Road, Portland. Paid by card ending 4421.",
    "Quarterly results: revenue rose 8% to $4.2 billion, operating margin fell to 11% because "
    "of higher energy costs, and the company kept its full-year forecast unchanged.",
]

SENTENCES = [
    "Where is the nearest train station?",
    "Our office will be closed on Monday for the public holiday.",
    "Please remember to bring your passport to the appointment.",
    "The meeting has been moved to next week.",
    "I would like to book a table for two at eight o'clock.",
    "Thank you for your patience while we fix the problem.",
    "The package was delivered to the wrong address.",
    "Could you send me the invoice again?",
    "This medicine should be taken twice a day after meals.",
    "The weather tomorrow will be sunny with a light breeze.",
    "Your order has shipped and should arrive on Friday.",
    "We are looking for a software engineer with five years of experience.",
]

LANGS = ["French", "Spanish", "German", "Italian", "Portuguese", "Japanese", "Chinese",
         "Korean", "Dutch", "Polish", "English", "Arabic", "Turkish", "Russian"]

TOPICS = ["remote work", "climate change", "a rainy Sunday", "our new coffee machine",
          "the first day of school", "electric cars", "a lighthouse keeper", "friendship",
          "the launch of our mobile app", "autumn in the mountains", "a lost cat",
          "healthy breakfast ideas", "the company's tenth anniversary", "learning to swim",
          "city gardens", "a robot who wants to paint"]

CONCEPTS = ["inflation", "photosynthesis", "a mortgage", "the immune system", "blockchain",
            "the French Revolution", "black holes", "compound interest", "jet lag",
            "a 401(k)", "the Roman Empire", "vaccines", "the stock market", "GDPR",
            "sourdough starter", "the electoral college", "a VPN", "cloud computing"]

CODE_SNIPPETS = [
    "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([]))",
    "for (let i = 0; i <= arr.length; i++) {\n  console.log(arr[i].name);\n}",
    "SELECT name, COUNT(*) FROM orders GROUP BY customer_id;",
    "public int fib(int n) {\n    return fib(n - 1) + fib(n - 2);\n}",
    "with open('data.csv') as f:\n    rows = f.readlines()\nrows.sort(key=lambda r: r[2])",
    "fn main() {\n    let v = vec![1, 2, 3];\n    let first = &v[0];\n    v.push(4);\n}",
    "import requests\nr = requests.get(url)\ndata = r.json()['items']",
]

CODE_TASKS = [
    ("reverses a linked list", "reverse a linked list"),
    ("checks whether a string is a palindrome", "check whether a string is a palindrome"),
    ("parses a CSV file and returns the average of a column", "average a column of a CSV file"),
    ("removes duplicates from a list while keeping order", "remove duplicates from a list"),
    ("validates an email address", "validate an email address"),
    ("merges two sorted arrays", "merge two sorted arrays"),
    ("counts word frequencies in a text file", "count word frequencies in a file"),
    ("retries an HTTP request with backoff", "retry an HTTP request with backoff"),
    ("converts Celsius to Fahrenheit", "convert Celsius to Fahrenheit"),
    ("finds the longest common prefix", "find the longest common prefix of some strings"),
]
CODE_LANGS = ["Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "Bash", "SQL",
              "C++", "Kotlin", "Ruby"]

TEMPLATES: dict[Kind, list[str]] = {
    Kind.TRANSLATION: [
        "Could you put this into {lang} for me? {sentence}",
        "Help me translate our product description to {lang}:\n{passage}",
        "What does \"{sentence}\" mean in {lang}? Give me the translation only.",
        "Localise this notice for our {lang}-speaking customers:\n{passage}",
        "Turn this English text into {lang}: {sentence}",
        "Translate this message from my colleague: {sentence}",
        "Give the {lang} equivalent of this sign: {sentence}",
        "I'm writing to a client in {lang}. Translate: {sentence}",
        "Translate into {lang}: {sentence}",
        "Translate the following sentence to {lang}.\n\n{sentence}",
        "How do you say \"{sentence}\" in {lang}?",
        "{sentence}\n\nTranslate the above into {lang}.",
        "Can you translate this email into {lang} for our partners?\n\n{passage}",
        "Please provide a {lang} translation of: {sentence}",
        "What is the {lang} for \"{sentence}\"",
        "Render this paragraph in {lang}, keeping the tone formal:\n{passage}",
        "I need this in {lang}, please: {sentence}",
        "Translate from English to {lang} and keep the formatting:\n{passage}",
        "Traduce al español: {sentence}",
        "Traduis en français : {sentence}",
        "Übersetze ins Deutsche: {sentence}",
        "请把下面这句话翻译成英文：{sentence}",  # noqa: RUF001
        "{lang} version of this, please:\n{sentence}",
    ],
    Kind.SUMMARY: [
        "Give me the short version of this {doc}:\n{passage}",
        "What are the highlights of this {doc}? {passage}",
        "Summarize this {doc} for a busy executive:\n{passage}",
        "In two sentences, what does this {doc} say? {passage}",
        "Summarize this for me: {passage}",
        "Boil this down to the essentials:\n{passage}",
        "Give me an executive summary of the report below.\n{passage}\n{passage2}",
        "What happened here, in a nutshell? {passage}",
        "Write a two-line abstract of this text:\n{passage}",
        "Make a short digest of these updates:\n- {passage}\n- {passage2}",
        "Can you recap the meeting notes below?\n{passage}",
        "I don't have time to read this, summarize it: {passage}",
        "Summarize the following email in two sentences:\n\n{passage}",
        "Give me a short summary of this text:\n{passage}",
        "TL;DR:\n{passage}",
        "{passage}\n\nSummarize the above in one sentence.",
        "Can you sum up these notes in three bullet points?\n{passage}",
        "What are the key points of this message?\n\n{passage}",
        "Write a brief recap of the following for my manager:\n{passage}",
        "Condense this into a headline and one line of context:\n{passage}",
        "Summarise this article for a newsletter:\n{passage}",
        "Please give the gist of this in plain words: {passage}",
        "Shorten this to under 30 words:\n{passage}",
        "Here is a long thread. What is it about, in short?\n{passage}\n{passage2}",
        "Résume ce texte en deux phrases :\n{passage}",
        "请用一句话总结以下内容：\n{passage}",  # noqa: RUF001
    ],
    Kind.EXTRACTION: [
        "Return only the {field} found in this text:\n{passage}",
        "What {field} are mentioned below? List them.\n{passage}",
        "Make a table of every {field} in: {passage}",
        "Convert this into JSON with the keys {keys}:\n{passage}",
        "Extract the key facts from this email as a list:\n{passage}",
        "Pull the dates out of this: {passage}",
        "From the text, extract every amount of money with its currency.\n{passage}",
        "Give me a table of names and roles mentioned in: {passage}",
        "Extract structured data (who, what, when, where) from this report:\n{passage}",
        "Find the invoice number and the due date in this message: {passage}",
        "Scan this text and list all the locations it mentions.\n{passage}",
        "Output the fields as JSON: sender, recipient, date.\n{passage}",
        "Extract all dates and amounts from the text below as JSON.\n\n{passage}",
        "List every person mentioned in this text:\n{passage}",
        "From the following message, pull out the order number, the customer name and the "
        "total.\n{passage}",
        "{passage}\n\nExtract the names, dates and places mentioned above.",
        "Return a JSON object with fields name, date and location from:\n{passage}",
        "Find all email addresses and phone numbers in this text: {passage}",
        "Which deadlines are mentioned here? Give them as a list.\n{passage}",
        "Parse this log line into timestamp, level, service and message:\n{passage}",
        "Fill the fields supplier, start_date, price and notice_period from this contract:\n"
        "{passage}",
        "Identify the named entities (people, organisations, locations) in:\n{passage}",
        "Get me the action items and their owners from these notes:\n{passage}",
        "What are the product names and prices in this order? Output CSV.\n{passage}",
        "请从下面的文本中提取所有的日期和金额：\n{passage}",  # noqa: RUF001
    ],
    Kind.CLASSIFICATION: [
        "Which of these labels fits best: {labels}?\n{review}",
        "Put this message into one bucket ({labels}):\n{passage}",
        "Answer with one word, {labels}: {review}",
        "Decide if this {thing} is {labels}.\n{review}",
        "Triage this ticket as {labels}:\n{passage}",
        "Classify this text: {passage}",
        "Is this review positive or negative? {review}",
        "Assign one category (sport, politics, tech, health) to this article:\n{passage}",
        "Does this email need a reply? Answer yes or no only.\n{passage}",
        "Detect the language of this sentence: {sentence}",
        "Label each message as urgent or not urgent:\n1. {sentence}\n2. {review}",
        "Is this comment toxic? {review}",
        "Pick the best topic label for this ticket: login, payments, shipping, other.\n{passage}",
        "Sentiment analysis: {review}",
        "Classify the sentiment of this review as positive, negative or neutral:\n{review}",
        "Is this customer message a complaint, a question or praise?\n\n{review}",
        "{review}\n\nLabel the review above: positive or negative?",
        "Which department should handle this ticket: billing, technical support or sales?\n"
        "{passage}",
        "Categorize this email into one of: meeting, invoice, support, spam.\n{passage}",
        "Is the following message spam? Answer yes or no.\n{passage}",
        "Tag this support request with its priority (low, medium, high):\n{passage}",
        "What is the intent of this user message? Options: cancel, refund, track order, other.\n"
        "{review}",
        "Rate the urgency of this note from 1 to 5 and give only the number:\n{passage}",
        "Decide whether this news item is about politics, business, sport or science:\n{passage}",
        "Sort this feedback into bug report or feature request: {review}",
        "Is the tone of this text formal or informal?\n{passage}",
        "请判断这条评论的情感是正面还是负面：{review}",  # noqa: RUF001
    ],
    Kind.WRITING: [
        "Write a {tone} {form} about {topic}.",
        "Draft a {tone} {form} for {audience}.",
        "Help me write a {form} to {audience} about {topic}.",
        "Can you come up with a few {names} for {topic}?",
        "Make this {form} sound more {adjective}:\n{sentence}",
        "Write copy for a landing page about {topic}.",
        "Give me a catchy headline for an article on {topic}.",
        "Write an email to the team announcing {topic}.",
        "Help me write a thank-you note to my colleague.",
        "Write a short story about {topic}.",
        "Create an Instagram caption for {topic}.",
        "Rephrase this to sound more confident:\n{sentence}",
        "Write song lyrics about {topic}.",
        "Compose a polite reply declining the invitation below.\n{passage}",
        "Write an engaging intro paragraph for an article on {topic}.",
        "Draft a press release about {topic}.",
        "Write a short poem about {topic}.",
        "Draft an email to my landlord about {topic}.",
        "Write a blog post introduction about {topic}.",
        "Compose a haiku about {topic}.",
        "Write a product description for {topic} in a playful tone.",
        "Rewrite this paragraph to sound more formal:\n{passage}",
        "Make this message friendlier without changing its meaning:\n{passage}",
        "Write a cover letter for a junior designer position.",
        "Come up with five slogans for {topic}.",
        "Write a bedtime story about {topic} for a six-year-old.",
        "Draft a LinkedIn post announcing {topic}.",
        "Pretend you are a pirate captain and describe {topic}.",
        # Role play: the answer is a performance in a voice, not a fact.
        "As a {role}, how would you describe {topic} to {audience}?",
        "Imagine you are a {role}. Write what you would say to {audience} about {topic}.",
        "If you were a {role}, how would you convince {audience} to care about {topic}?",
        "You are a {role}. Stay in character and greet {audience}.",
        "Play the part of a {role} giving a farewell speech to {audience}.",
        "Pretend to be a {role} and tell me about your day.",
        "Write a toast for my sister's wedding that mentions {topic}.",
        "Brainstorm ten blog post titles about {topic}.",
        "Paraphrase this so it does not sound copied:\n{passage}",
        "Write a speech for a school assembly on {topic}.",
        "Proofread and polish this text:\n{passage}",
        "Write the opening scene of a mystery novel set during {topic}.",
        "用轻松的语气写一段关于{topic}的短文。",
        "请以{topic}为题写一首小诗。",
        "帮我写一封邀请朋友参加聚会的邮件。",
        "为我们的新产品想五个宣传口号。",
        "请把这段话改写得更正式一些：{sentence}",  # noqa: RUF001
        "写一个关于{topic}的小故事，三百字左右。",  # noqa: RUF001
        # Writing from given words or keywords.
        "Write a sentence that uses all of these words: {words}.",
        "Keywords: {words}. Write a short paragraph that includes each of them.",
        "Use the following concepts in one coherent sentence: {words}",
        "Make up a short story containing the words {words}.",
        "Generate a description of an everyday scene using: {words}",
        "Compose a sentence with these terms: {words}",
        # A bare list of concepts with no instruction is, in public routing sets and
        # in the clients that send them, a request to write text from the concepts.
        "{concepts}",
        "{concepts}",
        "{concepts}.",
    ],
    Kind.CHAT: [
        "What do you think about {topic}?",
        "Where does the name {concept} come from?",
        "Is coffee bad for you?",
        "Can dogs eat grapes?",
        "How long should I boil an egg?",
        "What are the symptoms of {concept}?",
        "What is the tallest mountain in Africa?",
        "Who won the 2018 football World Cup?",
        "Should I learn Spanish or Italian first?",
        "What's a good name for a goldfish?",
        "Give me some ideas for a rainy afternoon with kids.",
        "What is {concept}?",
        "Can you explain {concept} in simple terms?",
        "Who invented the telephone?",
        "What's the difference between a virus and a bacterium?",
        "How do I get a red wine stain out of a carpet?",
        "Any tips for sleeping better?",
        "Tell me something interesting about {concept}.",
        "Why is the sky blue?",
        "What should I pack for a weekend in Lisbon?",
        "Is it safe to eat eggs after the best-before date?",
        "Recommend a good book about {concept}.",
        "hey, how are you today?",
        "What are the pros and cons of {topic}?",
        "How does {concept} work?",
        "What time zone is Chicago in?",
        "I feel stressed about my exams, any advice?",
        "What was the main cause of {concept}?",
        "Thanks! And what about the second option?",
        "What are some fun things to do in Tokyo?",
        "Could you tell me more about {concept}?",
        # Questions about a given text: answered from it, a quiz more than a task.
        "{passage}\n\nAccording to the passage, what is the main point?",
        "Read the text and answer the question.\n{passage}\nQuestion: who is mentioned first, "
        "and why?",
        "{passage}\nWhich of the following is supported by the text above?\nA. {sentence}\n"
        "B. Nothing is said about dates.\nC. It is a poem.\nD. It is a recipe.",
        "{passage}\n\nWhat does the author seem to feel about this?",
        "什么是{concept}？",  # noqa: RUF001
        "你觉得{topic}怎么样？",  # noqa: RUF001
        "周末去哪里玩比较好？",  # noqa: RUF001
        "为什么天空是蓝色的？",  # noqa: RUF001
        "怎样才能睡得更好？",  # noqa: RUF001
    ],
    Kind.CODE: [
        "Write a {clang} script that {task}.",
        "My {tool} build fails with this error, what should I check?\n{error}",
        "Explain this {clang} error: {error}",
        "Write a {tool} config that {devops}.",
        "How do I {devops} with {tool}?",
        "Generate a REST endpoint in {framework} that {task}.",
        "Why is my {framework} app slow when it {task}?",
        "Write a SQL query to find {sqlq}.",
        "Create a {framework} component that shows {ui}.",
        "Add error handling to this function:\n{code}",
        "What does this stack trace mean?\n{error}",
        "Port this function from Python to {clang}:\n{code}",
        "My Docker container exits immediately with code 137. What's happening?",
        "How do I undo the last git commit but keep the changes?",
        "Write a bash script that backs up a folder every night.",
        "Optimize this query, it takes 30 seconds:\n{code}",
        "Review this pull request snippet for bugs:\n{code}",
        "What's the difference between a list and a tuple in Python?",
        "Set up a GitHub Actions workflow that runs pytest on every push.",
        "Write a React component that shows a paginated table.",
        "Debug this: {code}",
        "Write a function {task_plain}.",
        "Write a {clang} function that {task}.",
        "Why does this code fail?\n```\n{code}\n```",
        "Refactor this code to be more readable:\n{code}",
        "Fix the bug in this snippet:\n{code}",
        "How do I {task_plain} in {clang}?",
        "Add type hints and a docstring to:\n{code}",
        "Write unit tests for a function that {task}.",
        "Explain what this code does:\n{code}",
        "I get an IndexError when I run this, what's wrong?\n{code}",
        "Convert this snippet to {clang}:\n{code}",
        "Write a SQL query that returns the ten customers with the highest total spend.",
        "Implement a class in {clang} that {task}.",
        "Write a regex that matches {clang} identifiers.",
        "What is the time complexity of this code?\n{code}",
        "用{clang}写一个函数，{task}。",  # noqa: RUF001
        # Code completion: a stub with its docstring, the body left to write.
        "Complete this function:\n{stub}",
        "{long_stub}",
        "Implement the function below.\n\n{long_stub}",
        "{stub}\n    # TODO: implement",
        "Fill in the body of this Python function so the docstring holds:\n\n{stub}",
    ],
    Kind.REASONING: [
        "If {a} workers finish a job in {b} days, how many days do {c} workers need?",
        "What day of the week is it {c} days after a Monday?",
        "A price rises by {a}% and then falls by {b}%. What is the net change?",
        "How many handshakes happen when {a} people all shake hands once?",
        "Solve the system: {a}x + y = {c} and x - y = {b}.",
        "If it takes 5 machines 5 minutes to make 5 widgets, how long do 100 machines take "
        "to make 100 widgets?",
        "What is {a}% of {c}?",
        "A rectangle has a perimeter of {c} cm and its length is {a} cm. What is its area?",
        "Work out how many days there are between 3 March and {b} July of the same year.",
        "Show that the sum of the first n odd numbers is n squared.",
        "Two trains start {c} km apart and approach each other at {a} and {b} km/h. When do "
        "they meet?",
        "Is {c} a prime number? Explain your reasoning.",
        "A bag has {a} red and {b} blue balls. Drawing two without replacement, what is the "
        "chance both are red?",
        "Find the minimum of f(x) = x^2 - {a}x + {b}.",
        "A train leaves at 9:40 and travels {a} km at {b} km/h. When does it arrive?",
        "Solve for x: {a}x + {b} = {c}.",
        "If I save ${a} a month at {b}% annual interest, how much do I have after {c} years?",
        "Prove that the square root of 2 is irrational.",
        "A shop sells pens at {a} for ${b}. How much do {c} pens cost?",
        "What is the probability of rolling two sixes with {a} dice?",
        "Three friends split a bill of ${a} so that one pays twice as much as each of the others. "
        "How much does each pay?",
        "Think step by step: if all bloops are razzies and some razzies are lazzies, are some "
        "bloops lazzies?",
        "How many ways can {a} people sit around a round table?",
        "Compute the derivative of x^{a} * ln(x).",
        "A tank fills in {a} hours and drains in {b} hours. How long to fill it with the drain "
        "open?",
        "Estimate how many piano tuners work in a city of {a} thousand people, showing your "
        "reasoning.",
        "Which is larger, {a}^{b} or {b}^{a}? Explain.",
        "In a logic puzzle, Anna is older than Ben, Ben is older than Cleo, and Dan is younger "
        "than Cleo. Who is the second oldest?",
        "Calculate the compound annual growth rate from {a} to {c} over {b} years.",
        "一个数的{a}倍加上{b}等于{c}，这个数是多少？",  # noqa: RUF001
        # Quantitative science questions: the answer is worked out, not recalled.
        "A ball is thrown straight up at {b} m/s. How high does it rise before falling back?",
        "How much energy does it take to heat {a} kg of water by {b} degrees Celsius?",
        "A {a} ohm resistor carries {b} mA. What voltage drops across it, and what power "
        "does it dissipate?",
        "What is the pH of a {b} mM solution of hydrochloric acid?",
        "A gas at {c} K and 1 atm is compressed to half its volume at constant temperature. "
        "What is its new pressure, and why?",
        "A population of bacteria doubles every {b} minutes. Starting from {a} cells, how many "
        "are there after {c} minutes?",
        "Which of these reactions is exothermic, and how would you determine its enthalpy "
        "change from bond energies?",
        "A car of mass {c} kg brakes from {a} m/s to rest in {b} m. What is the average "
        "braking force?",
    ],
}


ROLES = ["medieval knight", "pirate captain", "space colonist on Mars", "time traveller",
         "famous chef", "detective", "superhero", "tour guide in Rome", "startup founder",
         "wise old wizard", "sports coach", "museum curator"]
WORDS = ["dog", "frisbee", "catch", "park", "river", "boat", "rain", "umbrella", "kitchen",
         "bread", "knife", "guitar", "stage", "crowd", "snow", "mountain", "ski", "coffee",
         "laptop", "window", "train", "ticket", "garden", "shovel", "child", "kite", "wind",
         "market", "apple", "basket", "teacher", "board", "chalk", "horse", "field", "fence"]
# Everyday nouns and verbs for bare concept lists (not the WORDS above, so the model
# learns the shape of a list rather than the words in it).
CONCEPT_WORDS = [
    "apple", "bake", "ball", "beach", "bicycle", "bird", "boat", "book", "bottle", "bread",
    "bridge", "brush", "bus", "cake", "camera", "candle", "car", "carry", "cat", "chair", "cheese",
    "city", "climb", "clock", "cloud", "coat", "cook", "cow", "cup", "cut", "dance", "desk", "dig",
    "door", "draw", "dress", "drink", "drive", "duck", "egg", "farm", "feed", "fish", "flag",
    "floor", "flower", "fly", "food", "fork", "fox", "friend", "fruit", "game", "gate", "gift",
    "girl", "glass", "glove", "goat", "grass", "hammer", "hat", "hill", "hold", "hose", "house",
    "ice", "jacket", "jump", "key", "kick", "kid", "lamp", "leaf", "letter", "lift", "light",
    "lion", "map", "milk", "mirror", "money", "moon", "mouse", "music", "nest", "net", "ocean",
    "onion", "orange", "paint", "paper", "pen", "phone", "piano", "pick", "pillow", "plant",
    "plate", "play", "pool", "pour", "pull", "push", "rabbit", "read", "ride", "ring", "road",
    "rope", "run", "sand", "school", "sea", "sheep", "shirt", "shoe", "shop", "sing", "sink",
    "sit", "skate", "sleep", "smile", "soap", "sock", "soup", "spoon", "stone", "street", "sun",
    "swim", "table", "tea", "tent", "throw", "tie", "tire", "tree", "truck", "wash", "watch",
    "wave", "wheel", "window", "wine", "wood", "write", "yard",
]
TOOLS = ["Docker", "Kubernetes", "Terraform", "GitHub Actions", "webpack", "Maven", "npm",
         "Gradle", "nginx", "Ansible", "pip", "cargo"]
DEVOPS = ["caches dependencies between builds", "runs the tests on every push",
          "exposes port 8080", "mounts a volume for the database",
          "rotates the logs every day", "deploys to staging on merge"]
FRAMEWORKS = ["Flask", "Django", "FastAPI", "Express", "Spring Boot", "React", "Vue", "Rails",
              "Laravel", "Next.js"]
ERRORS = ["TypeError: 'NoneType' object is not subscriptable",
          "Segmentation fault (core dumped)",
          "java.lang.NullPointerException at OrderService.java:42",
          "ModuleNotFoundError: No module named 'yaml'",
          "error[E0502]: cannot borrow `v` as mutable because it is also borrowed as immutable",
          "Uncaught ReferenceError: user is not defined",
          "ERROR: relation \"orders\" does not exist"]
SQLQ = ["customers who ordered twice in one week", "the second highest salary",
        "products never sold", "monthly revenue for the last year"]
UI = ["a sortable table of users", "a login form with validation", "a progress bar",
      "a dropdown of countries"]
TONES = ["friendly", "formal", "playful", "warm", "short", "persuasive", "funny", "professional"]
FORMS = ["email", "reminder", "announcement", "thank-you note", "welcome message", "invitation",
         "apology", "newsletter intro", "product description", "social media post"]
AUDIENCES = ["new customers", "my team", "our investors", "the neighbours", "a hiring manager",
             "volunteers", "parents at the school"]
NAMES = ["names", "slogans", "taglines", "titles", "hashtags"]
ADJECTIVES = ["polite", "confident", "concise", "enthusiastic", "neutral"]
LABELS = ["positive / negative / neutral", "urgent / not urgent", "billing / technical / other",
          "spam / not spam", "bug / question / feature request", "sales / support / HR"]
THINGS = ["comment", "review", "message", "headline", "request"]
FIELDS = ["dates", "names", "prices", "addresses", "company names", "deadlines", "amounts"]
KEYS = ["name, date, amount", "title, owner, due", "sender, subject, action"]
DOCS = ["report", "email thread", "article", "memo", "transcript", "policy"]


# (argument, its type hint, an example value, an example result) for typed stubs.
STUB_ARGS = [
    ("numbers", "List[int]", "[1, 2, 3, 4]", "[4, 3, 2, 1]"),
    ("values", "List[float]", "[1.5, 2.0, 3.5]", "2.3333333333333335"),
    ("text", "str", "'racecar'", "True"),
    ("words", "List[str]", "['apple', 'apply', 'ape']", "'ap'"),
    ("n", "int", "10", "55"),
    ("grid", "List[List[int]]", "[[1, 2], [3, 4]]", "10"),
    ("s", "str", "'hello world'", "{'hello': 1, 'world': 1}"),
]


def _stub(task: tuple[str, str], rng: random.Random) -> str:
    """A function stub with a docstring, as code-completion requests send it: plain
    or typed, with doctest examples and the imports its hints need."""
    name = "_".join(w for w in task[1].split()[:3] if w not in ("a", "an", "the")).lower()
    if rng.random() < 0.4:
        arg = rng.choice(["items", "text", "values", "path", "data"])
        return f'def {name}({arg}):\n    """{task[1].capitalize()}.\n    >>> {name}(...)\n    """'
    arg, hint, example, result = rng.choice(STUB_ARGS)
    ret = rng.choice(["int", "bool", "str", "float", hint])
    head = "from typing import List\n\n\n" if "List" in hint + ret else ""
    cases = [(example, result)]
    if "List" in hint and rng.random() < 0.5:
        cases.append(("[]", "[]"))
    examples = "".join(f"    >>> {name}({ex})\n    {res}\n" for ex, res in cases)
    return (f'{head}def {name}({arg}: {hint}) -> {ret}:\n    """ {task[1].capitalize()}, '
            f'given {arg}.\n{examples}    """\n')


def _long_stub(task: tuple[str, str], rng: random.Random) -> str:
    """A stub whose docstring states the task at length, with a worked example."""
    name = "_".join(w for w in task[1].split()[:3] if w not in ("a", "an", "the")).lower()
    arg, _hint, example, result = rng.choice(STUB_ARGS)
    intro = rng.choice(["You are given", "Given", "This function receives", "Write code that takes"])
    rule = rng.choice(["If the input is empty, return an empty result.",
                       "Ignore negative numbers.", "The input is never longer than 1000 items.",
                       "Raise ValueError on invalid input.", "Keep the original order."])
    quote = rng.choice(['"""', "'''"])
    return (f"\ndef {name}({arg}):\n    {quote}\n    {intro} {arg}, {task[1]}.\n    {rule}\n\n"
            f"    Example:\n    {name}({example}) == {result}\n    {quote}\n")


def _fill(template: str, rng: random.Random) -> str:
    task = rng.choice(CODE_TASKS)
    values = {
        "lang": rng.choice(LANGS),
        "sentence": rng.choice(SENTENCES),
        "passage": rng.choice(PASSAGES),
        "passage2": rng.choice(PASSAGES),
        "review": rng.choice(PASSAGES[3:5] + PASSAGES[10:11] + PASSAGES[13:14] + SENTENCES[5:7]),
        "topic": rng.choice(TOPICS),
        "concept": rng.choice(CONCEPTS),
        "code": rng.choice(CODE_SNIPPETS),
        "clang": rng.choice(CODE_LANGS),
        "task": task[0],
        "task_plain": task[1],
        "stub": _stub(task, rng),
        "long_stub": _long_stub(task, rng),
        "role": rng.choice(ROLES),
        "words": ", ".join(rng.sample(WORDS, rng.randint(3, 6))),
        "concepts": ", ".join(rng.sample(CONCEPT_WORDS, rng.randint(3, 30))),
        "tool": rng.choice(TOOLS),
        "devops": rng.choice(DEVOPS),
        "framework": rng.choice(FRAMEWORKS),
        "error": rng.choice(ERRORS),
        "sqlq": rng.choice(SQLQ),
        "ui": rng.choice(UI),
        "tone": rng.choice(TONES),
        "form": rng.choice(FORMS),
        "audience": rng.choice(AUDIENCES),
        "names": rng.choice(NAMES),
        "adjective": rng.choice(ADJECTIVES),
        "labels": rng.choice(LABELS),
        "thing": rng.choice(THINGS),
        "field": rng.choice(FIELDS),
        "keys": rng.choice(KEYS),
        "doc": rng.choice(DOCS),
        "a": rng.randint(2, 90),
        "b": rng.randint(2, 30),
        "c": rng.randint(10, 500),
    }
    return template.format(**values)


def generate(per_kind: int = 300, seed: int = 7) -> list[tuple[str, Kind]]:
    """``per_kind`` prompts for each kind with templates, deduplicated, in a fixed order."""
    rng = random.Random(seed)
    out: list[tuple[str, Kind]] = []
    for kind, templates in TEMPLATES.items():
        seen: set[str] = set()
        tries = 0
        while len(seen) < per_kind and tries < per_kind * 20:
            tries += 1
            text = _fill(rng.choice(templates), rng)
            if text not in seen:
                seen.add(text)
                out.append((text, kind))
    return out
