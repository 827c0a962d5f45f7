"""Training objectives (Hydra `_target_`s in conf/objective/): each builds its batch features and its loss."""

from mmembed.objectives.base import EmbeddingObjective, Objective, ObjectiveOutput, StepContext
from mmembed.objectives.captioning import Captioning
from mmembed.objectives.distillation import RelationalDistillation, TeacherDistillation
from mmembed.objectives.hard_negative import HardNegativeNCE
from mmembed.objectives.image_text import ImageTextInfoNCE
from mmembed.objectives.infonce import TextPairInfoNCE
from mmembed.objectives.similarity_mse import SimilarityMSE
from mmembed.objectives.weighted_sum import WeightedSum

__all__ = [
    "Captioning",
    "EmbeddingObjective",
    "HardNegativeNCE",
    "ImageTextInfoNCE",
    "Objective",
    "ObjectiveOutput",
    "RelationalDistillation",
    "SimilarityMSE",
    "StepContext",
    "TeacherDistillation",
    "TextPairInfoNCE",
    "WeightedSum",
]
