"""quantwm.plan"""
