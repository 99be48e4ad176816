"""Converters: protocols served toward level 3 that become device requests decided by the engine.

The OPC UA converter (`opcua_*` modules) serves the zone's devices as a secure OPC UA address space,
polls them over the zone side and turns every OPC UA write into the Modbus write it causes.
"""
