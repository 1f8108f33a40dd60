"""idcrafter: multi-subject, identity-preserving video generation.

Importing the package is cheap and has no side effects; heavy modules (torch models,
diffusers pipelines, judge backends) are imported where they are used.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `from idcrafter import IDCrafterPipeline` without importing diffusers at package import
    if name == "IDCrafterPipeline":
        from idcrafter.pipeline import IDCrafterPipeline

        return IDCrafterPipeline
    raise AttributeError(name)
