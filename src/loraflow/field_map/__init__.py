"""What each engine does with every spec field: rendered with the same meaning, translated, or refused
while the spec is validated, so one spec trains the same way on every engine (docs/engines.md's table)."""

# One spec must train the same way on every engine, so no value may be dropped on the way to an engine.
# Each engine-facing field has a rule per engine; a value an engine cannot honour is refused while the
# spec is validated (`spec validate`, `render`, `train`, the API's 422), naming the field, the engine and
# the fix. Sections loraflow handles itself before any engine runs (dataset preparation, hosts, budget,
# publishing...) behave the same on every engine. docs/engines.md's table is generated from this module
# (`loraflow engines fields --markdown`), and a test keeps the two equal.
#
# Facts from the pinned engines (ai-toolkit 27a03a91, sd-scripts 48d368fa, musubi-tuner 30c658c4); see
# docs/engines.md.
#
# Modules: rules (the kinds of rule), conditions and musubi (when an engine refuses a value), fields (the
# map itself), checks (applying it to a spec), schema (walking the spec's models), defaults, docs (the table).

