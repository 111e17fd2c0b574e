"""quantwm.envs"""
