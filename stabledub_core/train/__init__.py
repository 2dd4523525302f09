"""Training: preprocessing of talking-face videos into shards (``preprocess``), head angles (``head_pose``).

Crops, masks and conditions come from the very functions inference uses (``pipeline.stages``, ``masks.crop_spans``,
``media.audio``), so a model sees in training what the pipeline gives it when dubbing.
"""
