# tierfleet: one image for every role (worker, API, Flower, reaper); the
# command picks the role. See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged user: a compromised worker should not own the container.
RUN groupadd --system --gid 10001 tierfleet \
 && useradd --system --uid 10001 --gid tierfleet --home-dir /var/lib/tierfleet \
        --shell /usr/sbin/nologin tierfleet

WORKDIR /opt/tierfleet
COPY pyproject.toml README* ./
COPY src ./src
# The image runs every hub role, so it carries the API and Flower extras.
RUN pip install '.[api,flower]'

COPY deploy/healthcheck.py /opt/tierfleet/healthcheck.py

# The config is mounted here (docker-compose.yml: ./fleet.toml). tiktoken's
# encodings are seeded offline into TIERFLEET_CACHE_DIR on first use; the ledger
# lives under /var/lib/tierfleet (a volume).
ENV TIERFLEET_CONFIG=/etc/tierfleet/fleet.toml \
    TIERFLEET_CACHE_DIR=/var/cache/tierfleet
RUN mkdir -p /etc/tierfleet /var/cache/tierfleet /var/lib/tierfleet/ledger \
 && chown -R tierfleet:tierfleet /var/cache/tierfleet /var/lib/tierfleet

USER tierfleet
WORKDIR /var/lib/tierfleet

CMD ["tierfleet", "--help"]
