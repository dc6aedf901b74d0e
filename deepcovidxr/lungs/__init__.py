"""The lungs: U-Net, segmentation rules, the cropper, augmentation, U-Net training, the crop
pipeline and the input check."""
