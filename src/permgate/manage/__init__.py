"""Managing the model: the service that enforces every rule of the model for every
caller, and the model as a policy file.
"""
