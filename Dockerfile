# One image for both processes: `python -m service` (the default) and `python -m worker`.
#
# TensorFlow gets CUDA the way its pip package is meant to: the `and-cuda` extra installs the
# CUDA 12 and cuDNN 9 libraries as NVIDIA wheels, so the host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit, and without a GPU the same image trains on the CPU.
# Python 3.11, as in development and the tests.
FROM python:3.11-slim

# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA runtime mounts into a container given a GPU
# (the CUDA driver library and nvidia-smi).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# The pinned dependencies first, read from pyproject.toml (the one place they are pinned), so
# this multi-gigabyte layer is rebuilt only when the pins change. `tensorflow[and-cuda]`
# adds the CUDA wheels at the pinned TensorFlow version: one TensorFlow, never a second.
# TensorFlow's RUNPATH misses some of those wheels' folders (curand, nvjitlink, nvrtc), so
# all of them are registered with the dynamic linker.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['postgres'], 'tensorflow[and-cuda]', sep='\n')" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && python -c "import glob, sysconfig; print(*sorted(glob.glob(sysconfig.get_path('purelib') + '/nvidia/*/lib')), sep='\n')" > /etc/ld.so.conf.d/tensorflow-cuda.conf \
 && ldconfig

# The project itself. Everything it needs, the postgres extra included, is installed above,
# so --no-deps adds tricklab alone and `pip check` proves nothing is missing or mismatched.
COPY analysis ./analysis
COPY cli ./cli
COPY core ./core
COPY jobqueue ./jobqueue
COPY search ./search
COPY service ./service
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps . \
 && pip check

# An unprivileged user owning /var/lib/tricklab, the state to keep on a volume shared by the
# API and the workers (a new named volume mounted there starts with this ownership and mode).
# /var/lib/tricklab-metrics holds the scraper's token alone, on a volume of its own that
# tricklab's group (Prometheus, in compose) may read. /datasets is where the dataset folder is
# mounted read-only: the image holds no datasets.
RUN groupadd --gid 10001 tricklab \
 && useradd --create-home --no-log-init --uid 10001 --gid 10001 tricklab \
 && mkdir -p /var/lib/tricklab/artifacts /var/lib/tricklab-metrics /datasets \
 && chown -R tricklab:tricklab /var/lib/tricklab /var/lib/tricklab-metrics \
 && chmod 0750 /var/lib/tricklab-metrics
USER 10001:10001

# Matplotlib's font cache (for the plots), built once here, not at every container's start.
RUN python -c "import matplotlib.font_manager"

# Settings (core/config.py) for a container: listen on every interface, keep state under
# the volume, read datasets from the mount.
ENV TRICKLAB_HOST=0.0.0.0 \
    TRICKLAB_PORT=8000 \
    TRICKLAB_DATABASE_URL=sqlite:////var/lib/tricklab/tricklab.db \
    TRICKLAB_ARTIFACTS_DIR=/var/lib/tricklab/artifacts \
    TRICKLAB_DATA_DIR=/datasets
# The admin's generated token, on the volume with PostgreSQL too (by default it goes beside
# the SQLite file, and without one into ./var: /app/var, inside the container). A path, not
# the token, which hadolint's DL3064 cannot tell from the name.
# hadolint ignore=DL3064
ENV TRICKLAB_ADMIN_TOKEN_FILE=/var/lib/tricklab/admin-token
EXPOSE 8000

# Ready when the API answers and its database does (/readyz is 503 otherwise). The worker
# serves no HTTP: run it with the health check disabled (compose does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TRICKLAB_PORT', '8000') + '/readyz', timeout=4)"]

CMD ["python", "-m", "service"]
