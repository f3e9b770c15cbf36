// Who is logged in, and what the role allows (the UI hides what the API
// would refuse anyway).
const roles = ['none', 'viewer', 'analyst', 'approver', 'admin'];
export const session = { me: null };
export const can = (role) => !!session.me && roles.indexOf(session.me.role) >= roles.indexOf(role);
