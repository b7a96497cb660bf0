"""Synthesis: teacher (generator -> features -> task head) -> (image, hard mask, uncertainty) -> tar shards.

    synthesize(workspace.teacher(), SynthesisConfig(n=10000, shard_size=1000, drop_uncertain=0.1), out_dir)

See labelgen/synthesis/synthesize.py for the shard plan (keys, seeds, drop rule), resume and
multi-worker behaviour; labelgen/teacher.py for features and predictions, labelgen/heads/uncertainty.py
for the uncertainty scores.
"""
from labelgen.synthesis.synthesize import ShardPlan, SynthesisConfig, SynthesisSummary, plan_shards, synthesize

__all__ = ["ShardPlan", "SynthesisConfig", "SynthesisSummary", "plan_shards", "synthesize"]
