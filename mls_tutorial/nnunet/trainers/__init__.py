"""The folder ``nnUNet_extTrainer`` points at: nnU-Net imports each module here as a top-level
module (so the modules use absolute imports) and only nnunetv2, torch and
``mls_tutorial.nnunet.penalties``."""
