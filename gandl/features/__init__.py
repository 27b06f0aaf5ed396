"""Feature extractors: each turns this process's images in [-1, 1] into one feature row per site.

`registry.EXTRACTORS` names them; the embed stage exports one feature set per name listed in
`config.embed.feature_sets`. A new extractor is one module here with a `(Context) -> FeatureFn` function
plus one registry entry.
"""
