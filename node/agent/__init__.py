"""The node agent: fetches desired state from the control plane, reconciles models/configs, ships
telemetry."""
