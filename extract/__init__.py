"""extract/"""
