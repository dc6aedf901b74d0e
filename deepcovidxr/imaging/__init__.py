"""Reading and shaping pixels: the one reader (PNG/JPEG/TIFF/DICOM), windowing, geometry, the CNN
input path, views, resizing."""
