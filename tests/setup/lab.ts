// Lab tests talk to a TCG-emulated kernel and may reboot it; hooks need the same room as tests.
jest.setTimeout(600_000);
