"""Running networks: the precision policy (``precision``), the machine (``hardware``), and the
inference engines (Keras, ONNX Runtime, OpenVINO): opening a model on one (``load``), the runners
(``runners``), the converters (``convert``), the export builds and their worker (``exports``,
``export_worker``), int8 calibration and quantisation (``int8``), the export cache (``cache``) and
the digests that key it (``digest``)."""
