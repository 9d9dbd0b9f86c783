"""The dialog: scenarios, task flows, replies, knowledge base, hand-off, plugins, the conversation
service and the tenant registry."""
