"""The student: a segmentation-models-pytorch network trained from the teacher's synthetic data."""
