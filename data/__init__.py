"""data/"""
