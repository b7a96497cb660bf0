"""Own-domain generator training (``labelgen train-generator``).

    labelgen.training.common            image loading (whole set as one uint8 tensor), start or
                                        resume, sample grids (device, torchrun, seeding, EMA,
                                        resume file, log, stopping: labelgen.engine)
    labelgen.training.train_generator   DDPM training -> a diffusers DDPMPipeline folder that the
                                        ``ddpm`` backend loads; dispatch by backend
    labelgen.training.stylegan2_trainer StyleGAN2 training (residual D, R1, DiffAugment)
    labelgen.training.cli               the ``train-generator`` click command

Nothing here imports torch at module import time except the trainers themselves, so the CLI stays
fast to start.
"""
