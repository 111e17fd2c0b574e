"""quantwm.quant"""
