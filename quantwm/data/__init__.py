"""quantwm.data"""
