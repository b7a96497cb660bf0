"""Synthesis: generator -> features -> task head -> (image, hard mask, uncertainty) -> tar shards.

    synthesize(workspace, SynthesisConfig(n=10000, shard_size=1000, drop_uncertain=0.1), out_dir)

See labelgen/synthesis/synthesize.py for the shard plan (keys, seeds, drop rule), resume and
multi-worker behaviour, and uncertainty.py for the uncertainty scores.
"""
from labelgen.synthesis.synthesize import ShardPlan, SynthesisConfig, SynthesisSummary, plan_shards, synthesize
from labelgen.synthesis.uncertainty import TOP_FRACTION, image_scores, pixel_uncertainty

__all__ = ["ShardPlan", "SynthesisConfig", "SynthesisSummary", "plan_shards", "synthesize", "TOP_FRACTION",
           "image_scores", "pixel_uncertainty"]
