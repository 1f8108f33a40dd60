"""Models: the ID-Crafter transformer, its subject stream and the codecs."""

from idcrafter.models.transformer import ConditionCache, IDCrafterTransformer3DModel

__all__ = ["ConditionCache", "IDCrafterTransformer3DModel"]
