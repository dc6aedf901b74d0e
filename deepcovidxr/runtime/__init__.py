"""Running networks: inference engines (Keras, ONNX Runtime, OpenVINO), their export cache,
precision, hardware."""
