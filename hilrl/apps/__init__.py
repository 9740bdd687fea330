"""Jobs built on the loop core: reward search (Eureka, ICPL) and its candidate trainings, language-correction
sessions (DROC) and the offline LLM demo. They use :mod:`hilrl.runtime`; nothing in the core imports them."""
