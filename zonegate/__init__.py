"""zonegate: a conduit for Modbus/TCP and EtherNet/IP at an industrial zone boundary."""

__version__ = "0.1.0"
