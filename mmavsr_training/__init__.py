"""mmavsr's training home: everything that builds, trains, evaluates, converts or exports a model, and all of the
project's command-line wording. It is never exported to the Hub: an exported model folder carries the model package
`modeling_mmavsr` (configuration, model parts, generation, pipelines, the feature API) and the data package
`mmavsr_processing` only.

- `arguments`: the training script's arguments and their parsing (auto_avsr's flags, JSON/YAML files, presets'
  recipes);
- `run`: the training script's numbered steps (`main`), which `run_speech_recognition_avsr.py` runs;
- `builder`: a model and its processor from choices, presets, saved models or auto_avsr checkpoints;
- `presets`: the named presets of `hub_configs/` (installed as `mmavsr_training.hub_configs`);
- `trainer`, `checkpointing`, `evaluation`: the Trainer, resuming and averaging checkpoints, WER and SNR tables;
- `convert_auto_avsr_checkpoint`, `convert_ctranslate2_whisper`, `export`: converters and the Hub export.
- `transcribe`: the `mmavsr-transcribe` command (recordings of any length to subtitles).

The dependency goes one way: this package imports `modeling_mmavsr` and `mmavsr_processing`, which never import it.
"""
