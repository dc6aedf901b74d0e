"""What a person looks at: matplotlib figures, OpenCV montages, HTML report pages, TensorBoard
images."""
