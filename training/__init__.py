"""Training and evaluation of AudioCNN on ESC-50."""
