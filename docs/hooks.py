"""mkdocs hook: the reference of every setting, generated from lradvisor/config/ (the one source of defaults and help
lines) where a page says <!-- settings -->."""

from dataclasses import MISSING

MARK = "<!-- settings -->"


def rows(fields, defaults=None):
    out = ["| setting | default | what it does |", "|---|---|---|"]
    for f in fields:
        default = getattr(defaults, f.name, f.default) if defaults is not None else f.default
        default = "" if default is MISSING else default
        text = f.metadata["help"].replace("%%", "%").replace("|", "\\|")
        out.append(f"| `{f.name}` | `{default}` | {text} |")
    return "\n".join(out)


def reference():
    from lradvisor.config import (
        BenchConfig,
        CompareConfig,
        PromptsConfig,
        SearchConfig,
        SweepConfig,
        TrainConfig,
        settings,
    )
    from lradvisor.config.decisions import DecisionsConfig, ScoreConfig

    train = settings(TrainConfig)
    own = lambda cls, skip=(): [f for f in settings(cls) if f.name not in skip]  # noqa: E731
    return "\n\n".join(
        [
            "### train (`lradvisor train`, MLproject `main`)",
            rows(train),
            "### sweep (`lradvisor sweep`, MLproject `sweep`)",
            "Its own settings; then every setting of train but "
            + ", ".join(f"`{k}`" for k in SweepConfig.PER_CHILD)
            + ", which it sets per child (`dataset`, `llm_models`, `temperatures` are lists, crossed).",
            rows(own(SweepConfig)),
            "### search (`lradvisor search`, MLproject `search`)",
            "Its own settings; then the training settings of train but "
            + ", ".join(f"`{k}`" for k in SearchConfig.NOT_SEARCHED)
            + " (its `holdout` defaults to 0.1).",
            rows(own(SearchConfig)),
            "### decisions build (`lradvisor decisions build`, MLproject `decisions`)",
            "Its own settings; then every setting of train but "
            + ", ".join(f"`{k}`" for k in DecisionsConfig.NOT_MEASURED)
            + ", with these defaults of its own:",
            rows(own(DecisionsConfig)),
            rows([f for f in train if getattr(DecisionsConfig().train, f.name) != f.default], DecisionsConfig().train),
            "### decisions score (`lradvisor decisions score`, MLproject `score`)",
            "Its own settings; then these settings of train (the rest come from the benchmark): "
            + ", ".join(f"`{k}`" for k in ScoreConfig.ADVISOR_SETTINGS)
            + ".",
            rows(own(ScoreConfig)),
            "### compare (`lradvisor compare`, MLproject `compare`)",
            rows(own(CompareConfig)),
            "### prompts (`lradvisor prompts`)",
            rows(own(PromptsConfig)),
            "### bench (`lradvisor bench`, `scripts/benchmark.py`)",
            rows(own(BenchConfig)),
        ]
    )


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(MARK, reference()) if MARK in markdown else markdown
