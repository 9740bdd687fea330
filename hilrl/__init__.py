"""hilrl: teach robot arms with people in the loop.

Importing ``hilrl`` registers the gymnasium ids of the MuJoCo arm tasks (``hilrl/Reach-v0``,
``hilrl/Push-v0``, ``hilrl/PickCube-v0``, ``hilrl/PegInsert-v0``) with string entry points, so
``import hilrl; gymnasium.make("hilrl/Reach-v0")`` works while ``import hilrl`` itself stays
cheap: MuJoCo (and torch) load only when a task is made (the way gymnasium-robotics and
metaworld register theirs). ``hilrl.envs`` describes the tasks and the time limit.
"""

__version__ = "0.1.0"

# The task classes, by module path: importing them here would import MuJoCo.
ENV_ENTRY_POINTS: dict[str, str] = {
    "hilrl/Reach-v0": "hilrl.envs.tasks.reach:ReachEnv",
    "hilrl/Push-v0": "hilrl.envs.tasks.push:PushEnv",
    "hilrl/PickCube-v0": "hilrl.envs.tasks.pick_cube:PickCubeEnv",
    "hilrl/PegInsert-v0": "hilrl.envs.tasks.peg_insert:PegInsertEnv",
}
# Applied by gymnasium.make after its TimeLimit: hands `max_episode_steps` to the task (hilrl.envs.wrappers).
TIME_LIMIT_WRAPPER = "hilrl.envs.wrappers:TaskTimeLimit"


def register_envs() -> None:
    """Register the hilrl task ids with gymnasium; ids already registered are left as they are."""
    import gymnasium as gym
    from gymnasium.envs.registration import WrapperSpec

    wrapper = WrapperSpec(name="TaskTimeLimit", entry_point=TIME_LIMIT_WRAPPER, kwargs={})
    for env_id, entry_point in ENV_ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, additional_wrappers=(wrapper,))


register_envs()
