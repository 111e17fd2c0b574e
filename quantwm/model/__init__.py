"""quantwm.model"""
