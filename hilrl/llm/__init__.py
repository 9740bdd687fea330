"""The LLM layer: providers (:mod:`~hilrl.llm.providers`: one interface, OpenAI-compatible servers, a local
transformers model, replay from a call log), the sandbox for LLM-written code (:mod:`~hilrl.llm.sandbox`),
reward code as a reward source (:mod:`~hilrl.llm.reward_code`), the tasks' texts (:mod:`~hilrl.llm.tasks`),
prompts as files (``prompts/``) and a scripted OpenAI-protocol server for offline runs
(:mod:`~hilrl.llm.scripted_server`). The searches themselves (Eureka, ICPL) are in
:mod:`hilrl.apps.reward_search`. Importing this package imports neither torch nor the openai SDK.
"""
