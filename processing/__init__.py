"""Data side of mmavsr: audio/video/text processing, datasets, augmentation and the demo corpus.

Installed under the import name ``mmavsr_processing`` (the source folder is ``processing/``).
"""
