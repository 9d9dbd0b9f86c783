"""Language understanding: language detection, entities, redaction, model predictions and batched
inference."""
