"""jobmill.domain"""
