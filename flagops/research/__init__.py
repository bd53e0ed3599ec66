"""The research systems of FlagEmbedding's README as pipeline branches (docs/research.md).

Each system is a module here and a branch of the catalog with its own config section and
``tiny_<name>`` profile. Each branch's evaluation step writes ``metrics/research_<name>.json``:
flat numbers (``dvc metrics show`` reads them) that the demo prints under ``RESEARCH_TITLES``.
"""

# metrics file stem -> the line the demo prints its numbers under
RESEARCH_TITLES = {
    "research_llm_embedder": "LLM-Embedder",
    "research_llara": "LLaRA",
    "research_beacon": "Activation Beacon",
    "research_visual_bge": "Visualized-BGE",
}
