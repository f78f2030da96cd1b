"""The result check: effect check and scorecard per kept checkpoint, in its own process where the base model is
(`python -m loraflow.evaluation CONFIG.json`); `scorecard` imports no torch (docs/scorecard.md)."""
