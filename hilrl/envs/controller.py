"""Damped-least-squares IK on the tool-centre-point site, driving joint position actuators.

The controller is stateless: every policy step it reads the current joint positions and
the site Jacobian from ``MjData`` and writes joint targets into ``data.ctrl``. Because
``ctrl`` is part of MuJoCo's integration state, ``get_state``/``set_state`` capture all
controller state and replay is exact.
"""

from __future__ import annotations

import mujoco
import numpy as np


class DLSController:
    """Map an end-effector pose error to joint position targets for a 7-DoF arm.

    Args:
        model: the MuJoCo model.
        data: the MuJoCo data the controller reads and writes.
        site_id: id of the site to control (the tool centre point).
        arm_qpos_adr: qpos addresses of the 7 arm joints (also their dof addresses).
        arm_actuator_ids: actuator ids driving those joints, in the same order.
        home_qpos: joint posture the null-space term pulls towards (keeps the elbow put).
        damping: DLS damping lambda; larger is more robust near singularities, less exact.
        nullspace_gain: fraction of the posture error corrected per call in the null space.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        site_id: int,
        arm_qpos_adr: np.ndarray,
        arm_actuator_ids: np.ndarray,
        home_qpos: np.ndarray,
        damping: float = 0.05,
        nullspace_gain: float = 0.1,
    ) -> None:
        self.model = model
        self.data = data
        self.site_id = site_id
        self.qadr = np.asarray(arm_qpos_adr, dtype=np.int64)
        # Arm joints are hinges, so qpos and dof addresses coincide; verified by the caller.
        self.dofadr = self.qadr
        self.act_ids = np.asarray(arm_actuator_ids, dtype=np.int64)
        self.home_qpos = np.asarray(home_qpos, dtype=np.float64).copy()
        self.damping_sq = float(damping) ** 2
        self.nullspace_gain = float(nullspace_gain)
        ctrlrange = model.actuator_ctrlrange[self.act_ids]
        self.ctrl_low = ctrlrange[:, 0].copy()
        self.ctrl_high = ctrlrange[:, 1].copy()
        # Scratch buffers reused every call (no per-step allocation of the big ones).
        self._jac = np.zeros((6, model.nv))  # rows 0-2 translation, 3-5 rotation
        self._rot_local = np.zeros(3)
        self._dq_full = np.zeros(model.nv)
        self._err = np.zeros(6)
        self._quat = np.zeros(4)
        self._eye6 = np.eye(6) * self.damping_sq
        self._jjt = np.zeros((6, 6))
        self._y = np.zeros(6)
        self._posture = np.zeros(model.nv)  # only the arm entries are ever non-zero
        # Arm dofs and actuators are contiguous (checked here) so slices replace fancy indexing.
        self._n = len(self.qadr)
        self._dof0 = int(self.qadr[0])
        if not np.array_equal(self.qadr, np.arange(self._n)):
            raise ValueError("the arm joints must be the model's first joints, in order")
        act0 = int(self.act_ids[0])
        if not np.array_equal(self.act_ids, np.arange(act0, act0 + self._n)):
            raise ValueError("arm actuators must be contiguous and in joint order")
        # Views into MjData (valid for its lifetime): writing _ctrl writes data.ctrl.
        self._ctrl = data.ctrl[act0 : act0 + self._n]
        self._arm_qpos = data.qpos[self._dof0 : self._dof0 + self._n]
        self._site_pos = data.site_xpos[site_id]
        self._site_mat = data.site_xmat[site_id]
        self._err_null = np.zeros(6)
        self._dq = np.zeros(self._n)

    def site_quat(self, out: np.ndarray | None = None) -> np.ndarray:
        """Current site orientation as a unit quaternion (w, x, y, z)."""
        out = np.empty(4) if out is None else out
        mujoco.mju_mat2Quat(out, self.data.site_xmat[self.site_id])
        return out

    def set_targets(self, target_pos: np.ndarray, target_quat: np.ndarray) -> None:
        """Write joint targets that move the site towards ``target_pos`` / ``target_quat``.

        Needs up-to-date kinematics (``mj_kinematics`` + ``mj_comPos``) in ``data``.
        ``dq = p + J^T (J J^T + lambda^2 I)^-1 (err - J p)`` with the posture pull ``p``:
        the damped least-squares step plus ``p`` projected on the (damped) null space of J.
        Written with MuJoCo's small-matrix routines: this runs every policy step.
        """
        # Jacobian rows written in place; columns of non-arm dofs are zero (the site is on the hand).
        mujoco.mj_jacSite(self.model, self.data, self._jac[:3], self._jac[3:], self.site_id)
        jac, err = self._jac, self._err
        np.subtract(target_pos, self._site_pos, out=err[:3])
        # Rotation error: mju_subQuat gives it in the site frame; rotate it into the world frame.
        mujoco.mju_mat2Quat(self._quat, self._site_mat)
        mujoco.mju_subQuat(self._rot_local, target_quat, self._quat)
        mujoco.mju_mulMatVec3(err[3:], self._site_mat, self._rot_local)

        posture, arm = self._posture, self._posture[: self._n]
        np.subtract(self.home_qpos, self._arm_qpos, out=arm)
        arm *= self.nullspace_gain
        mujoco.mju_mulMatVec(self._err_null, jac, posture)
        err -= self._err_null
        mujoco.mju_mulMatMatT(self._jjt, jac, jac)
        self._jjt += self._eye6
        mujoco.mju_cholFactor(self._jjt, 0.0)
        mujoco.mju_cholSolve(self._y, self._jjt, err)
        mujoco.mju_mulMatTVec(self._dq_full, jac, self._y)
        dq = self._dq
        np.add(self._dq_full[: self._n], arm, out=dq)
        dq += self._arm_qpos
        np.minimum(np.maximum(dq, self.ctrl_low, out=dq), self.ctrl_high, out=self._ctrl)
