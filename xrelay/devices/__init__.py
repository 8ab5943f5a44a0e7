"""
The device inventory: every client that talks to the relay, how, and which of them
fail ("which of my printers send mail, and which cannot get in?").

The inbound side reports to a L{DeviceCollector} (L{NullDevices} when
C{relay.device_inventory} is false); it writes C{state_dir/devices.sqlite} in batches
off the reactor thread; L{read_devices} reads it (read-only, daemon running or not) for
C{xrelay devices} and the admin page's Devices page, with the delivered and bounced
counts taken from the message trace.

Public API: L{Device}, L{Sighting}, L{LastRefusal}, L{DeviceCollector}, L{NullDevices},
L{DeviceStore}, L{read_devices}, L{devices_path}, L{InventoryMissing}.
"""

from xrelay.devices.collector import DeviceCollector, NullDevices
from xrelay.devices.records import FAILING, OK, STATES, Device, LastRefusal, Sighting
from xrelay.devices.store import DeviceStore, InventoryMissing, devices_path, read_devices

__all__ = ["Device", "DeviceCollector", "DeviceStore", "FAILING", "InventoryMissing",
           "LastRefusal", "NullDevices", "OK", "STATES", "Sighting", "devices_path",
           "read_devices"]
