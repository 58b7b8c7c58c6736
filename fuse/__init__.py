"""fuse/"""
