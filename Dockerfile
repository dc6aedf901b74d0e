# deepcovidxr on the official TensorFlow GPU image (CUDA and cuDNN included).
#   docker build -t deepcovidxr .
#   docker run --gpus all --rm -v /path/to/data:/data -v /path/to/weights:/weights deepcovidxr \
#       crop_img.py -f /data/raw -o /data/cropped
# Research software, not a medical device.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true

WORKDIR /opt/deepcovidxr
COPY requirements.txt pyproject.toml ./
# The base image already holds tensorflow 2.21.0; pip keeps it and adds the rest.
RUN python -m pip install --upgrade pip && python -m pip install -r requirements.txt
COPY . .
# The ray extra (--backend ray, docs/distributed.md), at the version pyproject.toml pins.
RUN python -m pip install --no-deps -e . && python -m pip install -e ".[ray]" && python crop_img.py --help > /dev/null

ENTRYPOINT ["python"]
CMD ["demo.py", "--output", "/tmp/demo_output"]
