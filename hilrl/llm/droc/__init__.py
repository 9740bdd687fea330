"""Language corrections (DROC: Zha et al., "Distilling and Retrieving Generalizable Knowledge for Robot
Manipulation via Language Corrections", 2023; Stanford-ILIAD/droc): an LLM plans skill calls
(:mod:`~hilrl.llm.droc.planner`), a person's correction is classified plan-level or skill-level and turned
into a constraint or corrective parameters (:mod:`~hilrl.llm.droc.corrections`: the rule for vague sizes),
and what was taught is distilled into a knowledge base (:mod:`~hilrl.llm.droc.knowledge`) retrieved on new
tasks by text and by a visual feature (:mod:`~hilrl.llm.droc.retrieval`). :mod:`~hilrl.llm.droc.scripted`
is a rule-based stand-in LLM for tests and benchmarks. The session loop is :mod:`hilrl.apps.correction_sessions`.
Importing this package imports neither torch nor sentence-transformers.
"""
