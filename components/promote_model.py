"""KFP component for catalog step ``promote_model``."""

from kfp.dsl import Artifact, Input, Output

from components import component, run_step


@component
def promote_model(params: str, tracking_uri: str, pipeline_key: str, registration: Input[Artifact], promotion: Output[Artifact]):
    """Give the `champion` alias only if the candidate beats the current champion."""
    run_step("promote_model", params, tracking_uri, pipeline_key, registration=registration, promotion=promotion)
