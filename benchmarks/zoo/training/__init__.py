"""Training scripts of the corpus's own models (the digits CNN shipped for the tests, and the
tf2onnx Keras exports under ``zoo/models``)."""
