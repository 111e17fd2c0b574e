"""quantwm.study"""
