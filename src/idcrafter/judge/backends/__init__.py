"""judge/backends"""
